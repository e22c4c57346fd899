"""LoReFT vs pyreft and RePE vs repeng, same weights and inputs (benchmarks/reference_checks.py).

The references pin transformers 4.45.1, so they run in their own venv. The test uses it when
it exists (``JOLALENS_REFERENCE_ENV``, default /work/envs/pyreft) and skips with the reason
otherwise: building it downloads ~1 GB (torch CPU + pyreft/repeng), too much for a test run.
"""

import importlib.util
from pathlib import Path

import pytest

_spec = importlib.util.spec_from_file_location(
    "reference_checks", Path(__file__).parents[2] / "benchmarks" / "reference_checks.py"
)
checks = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(checks)


def _python():
    python, why = checks.reference_python()
    if python is None:
        pytest.skip(f"pyreft/repeng reference env unavailable: {why}")
    return python


def _assert_agree(result, atol):
    lo, rp = result["loreft"], result["repe"]
    assert lo["param_copy_max_abs"] < 1e-6
    assert lo["edit_effect_max_abs_logit"] > 1e-2  # the edit does something ...
    assert lo["max_abs_logit_diff_hf_view"] < atol and lo["max_abs_logit_diff_hook_points"] < atol  # ... the same thing
    assert rp["min_cosine_reading"] > 0.999
    assert rp["control_effect_max_abs_logit"] > 1e-2 and rp["max_abs_logit_diff_control"] < atol


def test_tiny_model_agrees_with_pyreft_and_repeng():
    from jolalens.testing import tiny_model

    _assert_agree(checks.run_checks(tiny_model(seed=0, n_layers=4), "tiny", _python()), atol=1e-4)


@pytest.mark.integration
def test_embedded_model_agrees_with_pyreft_and_repeng(embedded):
    # fp32 over 30 layers with logits up to ~30: 5e-5 measured (2026-12-04), 1e-3 allowed
    _assert_agree(checks.run_checks(embedded, "embedded", _python()), atol=1e-3)
