"""Quantized inference: smaller, faster linear layers for searching and answering, never for training.

    >>> from ragloop import RAG, Retriever
    >>> rag = RAG.from_pretrained("runs/rag/best_model").quantize("int8")      # encoder + generator
    >>> r = Retriever.from_index("runs/squad-index", quantize="int8")          # the question encoder
    >>> Encoder.from_pretrained().quantize("int8").encode(["who wrote hamlet?"])

`int8` on CPU is dynamic quantization (`torch.ao.quantization.quantize_dynamic`): every `nn.Linear`
keeps int8 weights (one scale per output channel) and quantizes its input on the fly (one scale per
call; torch uses 7 of the 8 bits there). For all-MiniLM-L6-v2 on SQuAD text that keeps a vector's
cosine to its float32 twin at ~0.98 (per-tensor weight scales: ~0.95); what it costs retrieval is
measured by `python -m bench --only quantize` (gold@5). Embeddings, layer
norms, attention softmax and the copy head stay float32. On CUDA, where that kernel does not exist,
the same request casts the weights to bf16 (fp16 where bf16 is not supported) instead; what was
applied ("int8", "bf16", "fp16") is what every report shows.

A quantized model answers and searches; it cannot be trained (no gradients reach int8 weights) or
saved (a folder would hold weights other than the ones it was loaded from): both raise RagloopError.
Load the full-precision model again for either.

The generator's output projection (the vocabulary-sized LM head, 384 x 30522 for MiniLM) is left in
float32 unless `lm_head=True`: it is where the next token is chosen, and its cost per step is one
matrix-vector product; `python -m bench --only quantize` measures both variants.

Index fingerprints: an encoder remembers the probe vector (`Encoder.probe`) of its float32 weights
from before it was quantized, so an index built or queried with a quantized encoder is checked
against the same fingerprint as a float32 one; the manifest records `"quantize"` for a side that
encoded its vectors quantized.
"""

from __future__ import annotations

import logging
import warnings
from typing import TYPE_CHECKING

from ragloop.errors import RagloopError

if TYPE_CHECKING:  # torch is imported where a model is quantized: the CLI reads QUANTIZE_MODES without it
    import torch

log = logging.getLogger(__name__)

# what a user may ask for (the CLI's --quantize choices); "int8-lm-head": int8 with the generator's LM head
# quantized too (faster answers; `python -m bench --only quantize` measures what it costs in F1)
QUANTIZE_MODES = ("int8", "int8-lm-head")
WITH_LM_HEAD = "-lm-head"
_ATTR = "_ragloop_quantized"  # on a module: what was applied ("int8" | "bf16" | "fp16")


def check_mode(mode) -> str | None:
    """What `mode` applies to a model's linear layers ("int8" for both QUANTIZE_MODES; None: no
    quantization), else one clear error. Whether it covers the LM head too: `covers_lm_head`."""
    if mode is None or mode in QUANTIZE_MODES:
        return mode.removesuffix(WITH_LM_HEAD) if mode else mode
    raise RagloopError(f"unknown quantization {mode!r}; choose one of {', '.join(QUANTIZE_MODES)} (or none)")


def covers_lm_head(mode) -> bool:
    """Whether `mode` (one of QUANTIZE_MODES) quantizes the generator's LM head too."""
    return isinstance(mode, str) and mode.endswith(WITH_LM_HEAD)


def quantization(module: torch.nn.Module | None) -> str | None:
    """What `quantize_linear` applied to `module` ("int8", "bf16", "fp16"), or None: full precision."""
    return getattr(module, _ATTR, None) if module is not None else None


def quantize_linear(module: torch.nn.Module, mode: str, skip: tuple[torch.nn.Module, ...] = (),
                    what: str = "model") -> str | None:
    """Quantize `module`'s linear layers in place, except those in `skip` (and their children). Returns
    what was applied; a module already quantized is left as it is (asking twice is not an error). On
    CUDA the whole module's floating-point weights go to bf16 / fp16 instead."""
    import torch

    mode = check_mode(mode)
    if mode is None:
        return quantization(module)
    done = quantization(module)
    if done is not None:
        return done
    module.eval()
    first = next(module.parameters(), None)
    if first is not None and first.device.type == "cuda":  # no dynamic int8 kernels there: half weights
        applied = "bf16" if torch.cuda.is_bf16_supported() else "fp16"
        module.to(dtype=torch.bfloat16 if applied == "bf16" else torch.float16)
        log.info("%s: %s weights on %s (int8 dynamic quantization is CPU-only)", what, applied, first.device)
    else:
        skipped = {id(m) for s in skip for m in s.modules()}
        names = {name for name, m in module.named_modules()
                 if type(m) is torch.nn.Linear and id(m) not in skipped}
        if names:
            from torch.ao.quantization import per_channel_dynamic_qconfig, quantize_dynamic

            with warnings.catch_warnings():  # torch >= 2.10 marks quantized tensors deprecated (still supported)
                warnings.filterwarnings("ignore", message=".*quantize_per_(tensor|channel).*")
                warnings.filterwarnings("ignore", category=DeprecationWarning)
                # one scale per output row: MiniLM's vectors keep ~0.98 cosine to float32, ~0.95 per tensor
                quantize_dynamic(module, {name: per_channel_dynamic_qconfig for name in names}, inplace=True)
        applied = "int8"
        log.info("%s: %d linear layers quantized to int8 (dynamic), %d left in float32", what, len(names),
                 sum(1 for s in skip for m in s.modules() if isinstance(m, torch.nn.Linear)))
    setattr(module, _ATTR, applied)
    return applied


def refuse_quantized(module: torch.nn.Module | None, action: str, what: str) -> None:
    """One clear error when `module` is quantized and `action` ("train", "save") needs full precision."""
    applied = quantization(module)
    if applied is not None:
        raise RagloopError(f"cannot {action} {what}: it is quantized ({applied}), which is for inference only; "
                           "load the full-precision model again to " + action + " it")


def output_projection(model: torch.nn.Module) -> torch.nn.Module | None:
    """The vocabulary-sized output layer (LM head) of a HF model, or None if it has none."""
    get = getattr(model, "get_output_embeddings", None)
    try:
        return get() if get is not None else None
    except (NotImplementedError, AttributeError):
        return None


def quantize_encoder(encoder, mode: str | None):
    """`Encoder.quantize`: the probe of the float32 weights is kept first (see the module docstring)."""
    if check_mode(mode) is None or quantization(encoder.model) is not None:
        return encoder
    encoder.fp32_probe = encoder.probe()
    quantize_linear(encoder.model, mode, what=f"encoder {encoder.spec.name!r}")
    return encoder


def quantize_generator(generator, mode: str | None, lm_head: bool = False):
    """`Generator.quantize`: the seq2seq model's linear layers; the LM head only with `lm_head`; the copy
    head never (three small layers whose float32 attention decides what is copied)."""
    lm_head = lm_head or covers_lm_head(mode)
    mode = check_mode(mode)
    if mode is None or quantization(generator.model) is not None:
        return generator
    head = output_projection(generator.model)
    skip = () if lm_head or head is None else (head,)
    quantize_linear(generator.model, mode, skip=skip, what=f"generator {generator.name!r}")
    generator.lm_head_quantized = bool(lm_head and head is not None and quantization(generator.model) == "int8")
    return generator
