"""An independent JoLA, written straight from the paper's equations.

It shares no code with jolalens: a forward pre-hook on every Hugging Face ``o_proj`` reshapes
the input to [batch, pos, head, d_head] and applies ``(1 + g_m*m) * z + g_a*a`` with the
deterministic Hard-Concrete gate ``clip(1.2*sigmoid(log_alpha) - 0.1, 0, 1)``.
"""

from __future__ import annotations

import torch


def eval_gate(log_alpha: torch.Tensor) -> torch.Tensor:
    return torch.clamp(torch.sigmoid(log_alpha) * (1.1 - (-0.1)) + (-0.1), min=0.0, max=1.0)


class OracleJola:
    """Parameters per layer: a, m [H, d]; log_alpha_a, log_alpha_m [H]. Deterministic gates."""

    def __init__(self, n_layers, n_heads, d_head):
        self.n_heads, self.d_head = n_heads, d_head
        self.a = [torch.zeros(n_heads, d_head, requires_grad=True) for _ in range(n_layers)]
        self.m = [torch.zeros(n_heads, d_head, requires_grad=True) for _ in range(n_layers)]
        self.la_a = [torch.zeros(n_heads, requires_grad=True) for _ in range(n_layers)]
        self.la_m = [torch.zeros(n_heads, requires_grad=True) for _ in range(n_layers)]

    def hook(self, layer):
        def pre_hook(module, args):
            x = args[0]
            batch, pos, _ = x.shape
            z = x.reshape(batch, pos, self.n_heads, self.d_head)
            g_a = eval_gate(self.la_a[layer])
            g_m = eval_gate(self.la_m[layer])
            out = torch.empty_like(z)
            for h in range(self.n_heads):  # deliberately the plain per-head loop
                out[:, :, h, :] = (1 + g_m[h] * self.m[layer][h]) * z[:, :, h, :] + g_a[h] * self.a[layer][h]
            return (out.reshape(batch, pos, self.n_heads * self.d_head),)

        return pre_hook

    def attach(self, hf_model):
        handles = []
        for i, layer in enumerate(hf_model.model.layers):
            handles.append(layer.self_attn.o_proj.register_forward_pre_hook(self.hook(i)))
        return handles

    def parameters(self):
        return self.a + self.m + self.la_a + self.la_m
