"""The model behind one interface: SentencePiece in, CTranslate2 `translate_batch`, SentencePiece out.

Only ctranslate2 and sentencepiece are imported: no torch, no transformers at run time.
`translate` is blocking and releases the GIL inside CTranslate2; callers run it in a worker thread.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from pathlib import Path

import ctranslate2
import sentencepiece

from service.model_dir import SENTENCEPIECE_NAME, VOCABULARY_NAME, Manifest

log = logging.getLogger(__name__)

# CTranslate2's own default; long texts are split into sentences, so a sentence rarely needs more.
DEFAULT_MAX_DECODING_LENGTH = 256


class EngineError(RuntimeError):
    """The engine could not be started with the requested settings."""


@dataclass(frozen=True)
class Job:
    """One sentence (or a chunk of one) to translate. Hashable: identical jobs are batched once.

    `hypotheses` > 1 asks for that many distinct hypotheses (alternatives), decoded with a beam at least that wide;
    `attention` asks for the attention matrix of the best one (word alignment for HTML). Neither changes the best
    hypothesis of a job with the default beam: attention is read alongside the same search."""

    source: tuple[str, ...]  # ["__en__", *pieces, "</s>"]
    target_lang: str
    hypotheses: int = 1
    attention: bool = False

    @property
    def pieces(self) -> tuple[str, ...]:
        """The sentence's SentencePiece pieces: the language token and </s> left out."""
        return self.source[1:-1]


@dataclass(frozen=True)
class Translation:
    tokens: tuple[str, ...]  # target pieces, the language prefix dropped
    text: str
    hypotheses: tuple[str, ...] = ()  # every hypothesis's text, best first, when the job asked for several
    attention: tuple[tuple[float, ...], ...] | None = None  # the best hypothesis's, as CTranslate2 returns it


class Engine:
    def __init__(
        self,
        translator: ctranslate2.Translator,
        tokenizer: sentencepiece.SentencePieceProcessor,
        manifest: Manifest,
        *,
        beam_size: int,
        max_decoding_length: int,
        vocabulary: frozenset[str] | None = None,
    ) -> None:
        """`vocabulary`: the CTranslate2 model's tokens; pieces outside it are unknown to the model
        (translation_unknown_pieces_total). None: SentencePiece's own unknown id decides."""
        self._translator = translator
        self._tokenizer = tokenizer
        self.manifest = manifest
        self.beam_size = beam_size
        self.max_decoding_length = max_decoding_length
        tokens = manifest.special_tokens
        self._eos = tokens.eos
        self._vocabulary = vocabulary
        self._language_tokens = {lang: tokens.language_token(lang) for lang in manifest.languages}
        # A chunk must fit the encoder (language token and </s> included) and should be short
        # enough that its translation fits max_decoding_length.
        self.max_chunk_pieces = max(1, min(manifest.max_input_length - 2, max_decoding_length))

    @classmethod
    def load(
        cls,
        model_dir: Path,
        manifest: Manifest,
        *,
        device: str,
        compute_type: str,
        inter_threads: int,
        intra_threads: int,
        beam_size: int,
        max_decoding_length: int,
    ) -> Engine:
        device = resolve_device(device)
        compute_type = resolve_compute_type(device, compute_type)
        decoding_cap = manifest.max_decoding_length
        if max_decoding_length > decoding_cap:
            raise EngineError(f"max decoding length {max_decoding_length} exceeds what the model allows ({decoding_cap})")
        max_decoding_length = max_decoding_length or min(DEFAULT_MAX_DECODING_LENGTH, decoding_cap)
        log.info("loading %s on %s (%s, %d×%d threads)", model_dir, device, compute_type, inter_threads, intra_threads)
        try:
            translator = ctranslate2.Translator(
                str(model_dir),
                device=device,
                compute_type=compute_type,
                inter_threads=inter_threads,
                intra_threads=intra_threads,
            )
        except (RuntimeError, ValueError) as error:
            raise EngineError(f"cannot load the model from {model_dir}: {error}") from None
        tokenizer = sentencepiece.SentencePieceProcessor(model_file=str(Path(model_dir) / SENTENCEPIECE_NAME))
        vocabulary = _read_vocabulary(Path(model_dir) / VOCABULARY_NAME)
        return cls(
            translator, tokenizer, manifest,
            beam_size=beam_size, max_decoding_length=max_decoding_length, vocabulary=vocabulary,
        )  # fmt: skip

    @property
    def device(self) -> str:
        return self._translator.device

    @property
    def compute_type(self) -> str:
        return self._translator.compute_type

    @property
    def fingerprint(self) -> str:
        """What determines a translation besides its input; cache keys include it."""
        m = self.manifest
        return f"{m.source}@{m.source_revision or ''}:{m.quantization}:{m.created_at}:b{self.beam_size}:l{self.max_decoding_length}"

    def encode(
        self, sentence: str, source_lang: str, target_lang: str, *, hypotheses: int = 1, attention: bool = False
    ) -> list[Job]:
        """Tokenizes one sentence; one that is too long for the model becomes several chunks."""
        pieces = self._tokenizer.encode(sentence, out_type=str)
        language = self._language_tokens[source_lang]
        step = self.max_chunk_pieces
        return [
            Job((language, *pieces[start : start + step], self._eos), target_lang, hypotheses, attention)
            for start in range(0, len(pieces), step)
        ]

    def unknown_pieces(self, job: Job) -> int:
        """Source pieces of `job` the model has no embedding for (they reach it as <unk>)."""
        pieces = job.pieces
        if self._vocabulary is not None:
            vocabulary = self._vocabulary
            return sum(1 for piece in pieces if piece not in vocabulary)
        unk = self._tokenizer.unk_id()
        return sum(1 for piece in pieces if self._tokenizer.piece_to_id(piece) == unk)

    def translate(self, jobs: list[Job]) -> list[Translation]:
        """One engine call for the batch, or one per kind of job in it (plain, alternatives, attention): a call
        takes one beam and one set of options (blocking; run it in a worker thread)."""
        kinds: dict[tuple[int, bool], list[int]] = {}
        for index, job in enumerate(jobs):
            kinds.setdefault((job.hypotheses, job.attention), []).append(index)
        translations: list[Translation | None] = [None] * len(jobs)
        for (hypotheses, attention), indices in kinds.items():
            results = self._translator.translate_batch(
                [list(jobs[i].source) for i in indices],
                target_prefix=[[self._language_tokens[jobs[i].target_lang]] for i in indices],
                beam_size=max(self.beam_size, hypotheses),
                num_hypotheses=hypotheses,
                return_attention=attention,
                max_decoding_length=self.max_decoding_length,
                max_input_length=self.manifest.max_input_length,
            )
            for index, result in zip(indices, results):
                translations[index] = self._translation(result, hypotheses > 1, attention)
        return translations  # type: ignore[return-value]  # every index was filled

    def _translation(self, result, several: bool, attention: bool) -> Translation:
        tokens = tuple(result.hypotheses[0][1:])  # drop the target-language prefix
        decode = self._tokenizer.decode_pieces
        return Translation(
            tokens,
            decode(list(tokens)),
            tuple(decode(list(hypothesis[1:])) for hypothesis in result.hypotheses) if several else (),
            tuple(tuple(row) for row in result.attention[0]) if attention else None,
        )


def _read_vocabulary(path: Path) -> frozenset[str] | None:
    try:
        return frozenset(json.loads(path.read_text(encoding="utf-8")))
    except (OSError, ValueError, TypeError) as error:
        log.warning("cannot read the vocabulary %s (%s): unknown pieces are SentencePiece's own", path, error)
        return None


def resolve_device(device: str) -> str:
    if device == "auto":
        return "cuda" if ctranslate2.get_cuda_device_count() > 0 else "cpu"
    if device == "cuda" and ctranslate2.get_cuda_device_count() == 0:
        raise EngineError("device cuda was requested but CTranslate2 sees no CUDA device")
    return device


def resolve_compute_type(device: str, compute_type: str) -> str:
    if compute_type == "auto":
        # cuda: float16 ran 12% faster than int8_float16 on an H100 (issue 8); int8_float16 halves the
        # weights' memory, worth choosing explicitly on a small GPU. cpu: int8 (3-4x transformers fp32).
        return "float16" if device == "cuda" else "int8"
    supported = ctranslate2.get_supported_compute_types(device)
    if compute_type not in supported:
        raise EngineError(f"compute type {compute_type} is not supported on {device} (supported: {', '.join(sorted(supported))})")
    return compute_type
