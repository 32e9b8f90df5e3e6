from pathlib import Path

import pytest

from service.settings import Settings, SettingsError


def test_flags_win_over_environment_which_wins_over_defaults():
    settings = Settings.load(["--model-dir", "m", "--port", "1234"], {"MT_PORT": "9", "MT_BEAM_SIZE": "4"})
    assert settings.model_dir == Path("m")
    assert settings.port == 1234
    assert settings.beam_size == 4
    assert settings.host == "0.0.0.0"


def test_environment_alone_is_enough():
    settings = Settings.load([], {"MT_MODEL_DIR": "/models/m2m100", "MT_BATCHING": "off", "MT_REDIS_URL": "redis://r:6379/0"})
    assert settings.batching is False
    assert settings.redis_url == "redis://r:6379/0"


def test_settings_are_immutable():
    settings = Settings.load(["--model-dir", "m"], {})
    with pytest.raises(AttributeError):
        settings.port = 1


@pytest.mark.parametrize(
    "argv, environ, message",
    [
        ([], {}, r"--model-dir \(or MT_MODEL_DIR\) is required"),
        (["--model-dir", "m"], {"MT_PORT": "http"}, r"--port \(MT_PORT\) must be an integer, got 'http'"),
        (["--model-dir", "m", "--port", "70000"], {}, r"--port \(MT_PORT\) must be at most 65535"),
        (["--model-dir", "m", "--beam-size", "0"], {}, r"--beam-size \(MT_BEAM_SIZE\) must be at least 1, got 0"),
        (["--model-dir", "m", "--device", "tpu"], {}, r"--device \(MT_DEVICE\) must be one of auto, cpu, cuda, got 'tpu'"),
        (["--model-dir", "m"], {"MT_BATCHING": "maybe"}, r"--batching \(MT_BATCHING\) must be true or false"),
        (["--model-dir", "m"], {"MT_REDIS_URL": "localhost:6379"}, r"--redis-url \(MT_REDIS_URL\) must start with redis://"),
        (["--model-dir", "m"], {"MT_DRAIN_SECONDS": "-1"}, r"--drain-seconds \(MT_DRAIN_SECONDS\) must be at least 0"),
    ],
)
def test_bad_values_name_the_option(argv, environ, message):
    with pytest.raises(SettingsError, match=message):
        Settings.load(argv, environ)


def test_settings_left_at_zero_take_the_devices_defaults():
    cpu = Settings.load(["--model-dir", "m"], {}).for_device("cpu")
    assert (cpu.inter_threads, cpu.max_batch_size, cpu.max_batch_tokens, cpu.max_queue) == (2, 16, 2048, 128)
    assert cpu.max_in_flight == 128  # follows the queue
    cuda = Settings.load(["--model-dir", "m"], {}).for_device("cuda")
    assert (cuda.inter_threads, cuda.max_batch_size, cuda.max_batch_tokens, cuda.max_queue) == (2, 256, 16384, 4096)
    assert cuda.resolved and not Settings.load(["--model-dir", "m"], {}).resolved


def test_explicit_values_win_over_the_devices_defaults():
    settings = Settings.load(["--model-dir", "m", "--max-batch-size", "64"], {"MT_MAX_QUEUE": "10", "MT_MAX_IN_FLIGHT": "3"})
    cuda = settings.for_device("cuda")
    assert (cuda.max_batch_size, cuda.max_queue, cuda.max_in_flight, cuda.max_batch_tokens) == (64, 10, 3, 16384)


def test_a_runtime_refuses_settings_not_resolved_for_a_device():
    from service.runtime import Runtime

    with pytest.raises(ValueError, match="resolved for a device"):
        Runtime(Settings.load(["--model-dir", "m"], {}), manifest=None, load_engine=lambda: None)


def test_trusted_proxies_must_be_addresses_or_networks():
    from service.settings import Settings, SettingsError

    assert Settings.load(["--model-dir", "m", "--forwarded-allow-ips", "127.0.0.1, 10.0.0.0/8, ::1"], {})
    with pytest.raises(SettingsError, match=r"--forwarded-allow-ips \(MT_FORWARDED_ALLOW_IPS\): 'nginx' is not an IP"):
        Settings.load(["--model-dir", "m"], {"MT_FORWARDED_ALLOW_IPS": "nginx"})
