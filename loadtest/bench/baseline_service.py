"""The baseline: the transformers service a user would otherwise deploy ("seed-style"), for `make bench`.

    python -m loadtest.bench.baseline_service --checkpoint DIR [--device cpu|cuda] [--beam-size B]
        [--max-new-tokens N+1] [--min-new-tokens N+1] [--host 127.0.0.1] [--port P]

The same API contract as the service (POST /translation {"payload": {"fromLang", "toLang", "records":
[{"id", "text"}]}} -> {"result": [{"id", "text"}]}, GET /readyz, GET /metrics) on the Hugging Face checkpoint:
M2M100ForConditionalGeneration.generate, float16 on cuda, one request at a time (an asyncio.Lock around a
worker-thread call), no batching across requests, no sentence splitting, no cache. It counts its output tokens
the way the service does (translation_output_tokens_total: pieces after the target-language token, </s> and
padding left out), so the bench's client measures both servers alike. It sets the service's timing headers
too (x-queue-time: waiting for the lock; x-inference-time: the generate call).

Deliberately self-contained (no imports from service/ or the bench): it stands for code written without
this project.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import time
from pathlib import Path

import uvicorn
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, generate_latest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route


class Translator:
    """The model and its tokenizer; `translate` is blocking (run it in a worker thread)."""

    def __init__(self, checkpoint: Path, device: str, beam_size: int, max_new_tokens: int, min_new_tokens: int):
        import torch
        import transformers
        from transformers import M2M100ForConditionalGeneration, M2M100Tokenizer

        transformers.utils.logging.set_verbosity_error()
        self.torch = torch
        self.device = device
        self.tokenizer = M2M100Tokenizer.from_pretrained(str(checkpoint))
        dtype = torch.float16 if device == "cuda" else torch.float32
        self.model = M2M100ForConditionalGeneration.from_pretrained(str(checkpoint), dtype=dtype).to(device).eval()
        self.generate_options = {"num_beams": beam_size, "do_sample": False, "max_new_tokens": max_new_tokens}
        if min_new_tokens:
            self.generate_options["min_new_tokens"] = min_new_tokens
        self.skip = {self.tokenizer.eos_token_id, self.tokenizer.pad_token_id}

    def languages(self) -> set[str]:
        return set(self.tokenizer.lang_code_to_id)

    def translate(self, texts: list[str], source_lang: str, target_lang: str) -> tuple[list[str], int]:
        """The translations and their output-token count."""
        self.tokenizer.src_lang = source_lang
        batch = self.tokenizer(texts, return_tensors="pt", padding=True).to(self.device)
        with self.torch.inference_mode():
            output = self.model.generate(
                **batch, forced_bos_token_id=self.tokenizer.get_lang_id(target_lang), **self.generate_options
            )
        # output rows: [decoder start </s>, __xx__, pieces..., </s>, <pad>...]
        tokens = sum(1 for row in output[:, 2:].tolist() for token in row if token not in self.skip)
        return self.tokenizer.batch_decode(output, skip_special_tokens=True), tokens


def create_app(translator: Translator) -> Starlette:
    registry = CollectorRegistry()
    output_tokens = Counter("translation_output_tokens", "Target tokens produced", registry=registry)
    requests = Counter("translation_requests", "Translation requests by HTTP status", ["status"], registry=registry)
    lock = asyncio.Lock()  # one generate call at a time: the seed-style service has no batcher
    languages = translator.languages()

    def error(status: int, code: str, message: str) -> Response:
        requests.labels(status=str(status)).inc()
        return JSONResponse({"error": {"code": code, "message": message}}, status_code=status)

    async def translation(request: Request) -> Response:
        started = time.perf_counter()
        try:
            payload = (await request.json())["payload"]
            from_lang, to_lang = payload["fromLang"], payload["toLang"]
            ids = [record["id"] for record in payload["records"]]
            texts = [str(record["text"]) for record in payload["records"]]
        except (ValueError, KeyError, TypeError):
            return error(422, "validation_failed", "expected {payload: {fromLang, toLang, records: [{id, text}]}}")
        if not {from_lang, to_lang} <= languages:
            return error(422, "unsupported_language", f"unsupported language in {from_lang!r} -> {to_lang!r}")
        if not texts:
            return JSONResponse({"result": []})
        async with lock:
            queued = time.perf_counter()
            translations, tokens = await asyncio.to_thread(translator.translate, texts, from_lang, to_lang)
            inferred = time.perf_counter()
        output_tokens.inc(tokens)
        requests.labels(status="200").inc()
        response = JSONResponse({"result": [{"id": i, "text": t} for i, t in zip(ids, translations, strict=True)]})
        response.headers["x-queue-time"] = f"{(queued - started) * 1000:.3f}"
        response.headers["x-inference-time"] = f"{(inferred - queued) * 1000:.3f}"
        response.headers["x-total-time"] = f"{(time.perf_counter() - started) * 1000:.3f}"
        return response

    async def readyz(request: Request) -> Response:
        return JSONResponse({"status": "ready"})  # the model was loaded and warmed before the server listened

    async def metrics(request: Request) -> Response:
        return Response(generate_latest(registry), media_type=CONTENT_TYPE_LATEST)

    routes = [
        Route("/translation", translation, methods=["POST"]),
        Route("/readyz", readyz, methods=["GET"]),
        Route("/metrics", metrics, methods=["GET"]),
    ]
    return Starlette(routes=routes)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m loadtest.bench.baseline_service", description=__doc__.split("\n\n")[0])
    parser.add_argument("--checkpoint", type=Path, required=True, help="Hugging Face M2M100 checkpoint directory")
    parser.add_argument("--device", choices=("cpu", "cuda"), default="cpu")
    parser.add_argument("--beam-size", type=int, default=2, help="num_beams (the service's default is 2)")
    parser.add_argument("--max-new-tokens", type=int, default=256, help="language token included")
    parser.add_argument("--min-new-tokens", type=int, default=0, help="0: stop at </s>; = --max-new-tokens: fixed length")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=9528)
    args = parser.parse_args(argv)
    if not (args.checkpoint / "config.json").is_file():
        parser.error(f"no Hugging Face checkpoint at {args.checkpoint}")

    # Loaded and warmed up before listening, as a seed-style service does: a failure ends the process at once.
    translator = Translator(args.checkpoint, args.device, args.beam_size, args.max_new_tokens, args.min_new_tokens)
    translator.translate(["Hello world."], "en", "en")
    uvicorn.run(create_app(translator), host=args.host, port=args.port, log_level="warning", access_log=False)
    return 0


if __name__ == "__main__":
    sys.exit(main())
