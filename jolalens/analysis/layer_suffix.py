"""Running only decoder layers ``l..L-1`` of the Hugging Face view, from a recorded residual stream.

Ablating a head of layer ``l`` changes nothing below ``l``: the residual stream entering layer
``l`` is the clean run's. :class:`LayerSuffix` records that stream on a clean forward (a
forward-pre hook on every decoder layer) and later replays it: layers ``0..l-1`` are swapped,
for one forward, for a stub that returns the recorded tensor, so layer ``l`` sees exactly what
it saw on the clean run and the model still builds everything else itself, from the same
``input_ids`` and ``attention_mask``: the causal/padding mask (per layer type, e.g. Gemma 3's
sliding layers, which the model looks up by the layer's index, unchanged by the swap), the
rotary embeddings, the final norm and the unembedding at ``logits_to_keep``. The embedding
lookup still runs (cheap); the stubs' output ignores it.

This relies on the decoder layers being called one after another, each on the previous one's
output, which holds for the Llama-style models :func:`jolalens.hf_view.decoder_layers` accepts
(Llama, Gemma 3 in transformers 5). :func:`jolalens.analysis.ablation.ablation_scores` checks it
on real data (a resumed forward without patches must reproduce the clean log-probs) and runs
full forwards when it does not.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from torch import Tensor, nn

from ..hf_view import decoder_layers

__all__ = ["LayerSuffix"]


class _Replay(nn.Module):
    """Stands in for a skipped decoder layer: returns the recorded residual stream."""

    def __init__(self, hidden: Tensor, as_tuple: bool) -> None:
        super().__init__()
        self.hidden = hidden  # a plain attribute, not a buffer: never saved or moved
        self.as_tuple = as_tuple

    def forward(self, *args: Any, **kwargs: Any) -> Any:
        return (self.hidden,) if self.as_tuple else self.hidden


class LayerSuffix:
    """Records the input of every decoder layer of ``view`` and resumes forwards from one."""

    def __init__(self, view: nn.Module) -> None:
        self.layers = decoder_layers(view)
        self.as_tuple = False  # whether a decoder layer returns a tuple (older transformers)

    @contextmanager
    def recording(self) -> Iterator[list[Tensor]]:
        """Within the block, a forward fills the list with each layer's input, in layer order."""
        inputs: dict[int, Tensor] = {}
        recorded: list[Tensor] = []

        def grab(layer: int) -> Any:
            def pre_hook(module: nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
                inputs[layer] = (args[0] if args else kwargs["hidden_states"]).detach()

            return pre_hook

        def output_kind(module: nn.Module, args: tuple[Any, ...], output: Any) -> None:
            self.as_tuple = isinstance(output, tuple)

        handles = [layer.register_forward_pre_hook(grab(i), with_kwargs=True) for i, layer in enumerate(self.layers)]
        handles.append(self.layers[0].register_forward_hook(output_kind))
        try:
            yield recorded
        finally:
            for handle in handles:
                handle.remove()
        if len(inputs) != len(self.layers):
            raise RuntimeError(f"recorded {len(inputs)} of {len(self.layers)} decoder layers' inputs")
        recorded.extend(inputs[i] for i in range(len(self.layers)))

    @contextmanager
    def starting_at(self, layer: int, hidden: Tensor) -> Iterator[None]:
        """Within the block, a forward skips layers ``0..layer-1``; layer ``layer`` sees ``hidden``.

        ``hidden`` must have the batch shape of the forward's ``input_ids``. The layer list is
        restored on exit, also after an error; meanwhile the view is not fit for other use (another
        thread running it would skip the same layers).
        """
        if not 0 <= layer < len(self.layers):
            raise ValueError(f"layer {layer} out of range: {len(self.layers)} decoder layers")
        if layer == 0:  # nothing to skip: layer 0's input is the embedding the model computes
            yield
            return
        stub = _Replay(hidden, self.as_tuple)
        originals = [self.layers[i] for i in range(layer)]
        try:
            for i in range(layer):
                self.layers[i] = stub
            yield
        finally:
            for i, module in enumerate(originals):
                self.layers[i] = module
