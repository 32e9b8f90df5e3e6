"""The two engines measured offline, in this process: CTranslate2 (the service's engine) and transformers.

Output tokens are counted after the target-language token, the same way the service counts them
(translation_output_tokens_total): a translation of N tokens is `__fr__` followed by N pieces.
CTranslate2's decoding length includes the language token, so N tokens means max_decoding_length N + 1;
transformers' new tokens include the forced language token too, so N tokens means max_new_tokens N + 1.
"""

from __future__ import annotations

import gc
import hashlib
import json
import os
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class Shape:
    """What one engine call computed. A warm-up only counts if its Shape equals the timed run's: same inputs
    (by digest), batch, beam and decoding length, so no first-call cost (kernel selection, allocator growth,
    cuBLAS autotuning on a GPU) of that shape can land in the timed run."""

    sentences: int
    beam_size: int
    min_decoding_length: int  # tokens decoded per sentence, the language token included
    max_decoding_length: int
    max_batch_size: int  # sentences per internal batch; 0 = all of them in one
    inputs: str  # digest of the inputs: the same sentences, not just as many


def digest(inputs: Sequence) -> str:
    return hashlib.sha256(json.dumps(inputs).encode()).hexdigest()[:16]


@dataclass(frozen=True)
class Timed:
    seconds: float
    output_tokens: int
    sentences: int
    shape: Shape

    @property
    def tokens_per_second(self) -> float:
        return self.output_tokens / self.seconds if self.seconds > 0 else 0.0


class Ct2Engine:
    """A CTranslate2 Translator on a model directory, called the way service/engine.py calls it."""

    def __init__(self, model_dir: Path, *, device: str, compute_type: str, inter_threads: int, intra_threads: int):
        import ctranslate2
        import sentencepiece

        from service.model_dir import SENTENCEPIECE_NAME, read_manifest

        self.manifest = read_manifest(model_dir)
        self.device, self.inter_threads, self.intra_threads = device, inter_threads, intra_threads
        self.translator = ctranslate2.Translator(
            str(model_dir), device=device, compute_type=compute_type, inter_threads=inter_threads, intra_threads=intra_threads
        )
        self.compute_type = self.translator.compute_type
        self.tokenizer = sentencepiece.SentencePieceProcessor(model_file=str(Path(model_dir) / SENTENCEPIECE_NAME))
        tokens = self.manifest.special_tokens
        self._eos = tokens.eos
        self._language = tokens.language_token

    def encode(self, texts: Sequence[str], source_lang: str) -> list[list[str]]:
        language = self._language(source_lang)
        return [[language, *self.tokenizer.encode(text, out_type=str), self._eos] for text in texts]

    def encode_as_service(self, texts: Sequence[str], source_lang: str, target_lang: str, max_decoding_length: int) -> list[list[str]]:
        """The engine inputs the service makes of these texts: split into sentences (service/segment.py), and
        sentences longer than the decoding length split into chunks (service/engine.py), so that offline and
        service runs do exactly the same work."""
        from service import segment
        from service.engine import Engine

        engine = Engine(self.translator, self.tokenizer, self.manifest, beam_size=1, max_decoding_length=max_decoding_length)
        return [
            list(job.source)
            for text in texts
            for sentence in segment.split(text, language=source_lang).sentences
            for job in engine.encode(sentence, source_lang, target_lang)
        ]

    def translate(
        self,
        sources: Sequence[Sequence[str]],
        target_lang: str,
        *,
        beam_size: int,
        max_decoding_length: int,
        min_decoding_length: int = 0,
        max_batch_size: int = 0,
    ) -> Timed:
        prefix = [[self._language(target_lang)] for _ in sources]
        shape = Shape(
            len(sources), beam_size, min_decoding_length, max_decoding_length, max_batch_size,
            digest([target_lang, *(list(source) for source in sources)]),
        )
        started = time.perf_counter()
        results = self.translator.translate_batch(
            [list(source) for source in sources],
            target_prefix=prefix,
            beam_size=beam_size,
            max_decoding_length=max_decoding_length,
            min_decoding_length=min_decoding_length,
            max_input_length=self.manifest.max_input_length,
            max_batch_size=max_batch_size,
        )
        seconds = time.perf_counter() - started
        return Timed(seconds, sum(len(r.hypotheses[0]) - 1 for r in results), len(sources), shape)

    def close(self) -> None:
        del self.translator
        gc.collect()


class HfEngine:
    """transformers' M2M100ForConditionalGeneration.generate on the original checkpoint."""

    def __init__(self, checkpoint: Path, *, device: str, dtype: str):
        import torch
        import transformers
        from transformers import M2M100ForConditionalGeneration, M2M100Tokenizer

        transformers.utils.logging.set_verbosity_error()
        self.torch = torch
        self.device = device
        self.dtype_name = dtype
        if device == "cpu":
            torch.set_num_threads(os.cpu_count() or 1)
        self.tokenizer = M2M100Tokenizer.from_pretrained(str(checkpoint))
        model = M2M100ForConditionalGeneration.from_pretrained(str(checkpoint), dtype=getattr(torch, dtype))
        # transformers types `.to` through a decorator that mypy reads as taking the model as its first argument.
        self.model = model.to(device).eval()  # type: ignore[arg-type]

    def translate(
        self, texts: Sequence[str], source_lang: str, target_lang: str, *, beam_size: int, new_tokens: int
    ) -> Timed:
        """Exactly `new_tokens` tokens per sentence after the language token (EOS suppressed until then)."""
        torch = self.torch
        self.tokenizer.src_lang = source_lang
        batch = self.tokenizer(list(texts), return_tensors="pt", padding=True).to(self.device)
        shape = Shape(len(texts), beam_size, new_tokens + 1, new_tokens + 1, 0, digest([source_lang, target_lang, *texts]))
        self._sync()
        started = time.perf_counter()
        with torch.inference_mode():
            output = self.model.generate(
                **batch,
                forced_bos_token_id=self.tokenizer.get_lang_id(target_lang),
                num_beams=beam_size,
                do_sample=False,
                min_new_tokens=new_tokens + 1,
                max_new_tokens=new_tokens + 1,
            )
        self._sync()
        seconds = time.perf_counter() - started
        # output: [decoder start </s>, __xx__, new_tokens pieces]
        return Timed(seconds, (output.shape[1] - 2) * output.shape[0], len(texts), shape)

    def _sync(self) -> None:
        if self.device == "cuda":
            self.torch.cuda.synchronize()

    def close(self) -> None:
        del self.model
        gc.collect()
        if self.device == "cuda":
            self.torch.cuda.empty_cache()
