"""The cloze protocol on the embedded model agrees with lm-evaluation-harness on all 8 tasks."""

from __future__ import annotations

import numpy as np
import pytest

from jolalens.cloze import cloze_pairs, option_lengths, score_cloze
from jolalens.hf_view import hf_view
from jolalens.tasks import load_task_splits, task_names

pytestmark = pytest.mark.integration
lm_eval_hf = pytest.importorskip("lm_eval.models.huggingface")


def test_cloze_matches_lm_eval_on_every_commonsense_task(embedded):
    from lm_eval.api.instance import Instance

    lm = lm_eval_hf.HFLM(pretrained=hf_view(embedded), tokenizer=embedded.tokenizer, batch_size=4, max_length=2048)
    for name in task_names("commonsense"):
        items = load_task_splits(name, 0, 0, 3, protocol="cloze").test
        ours = score_cloze(embedded, items, batch_size=4, max_length=2048, progress=False)
        reqs = [Instance("loglikelihood", {}, pair, k) for ex in items for k, pair in enumerate(cloze_pairs(ex))]
        flat = iter(ll for ll, _ in lm.loglikelihood(reqs, disable_tqdm=True))
        for ex, mine in zip(items, ours, strict=True):
            theirs = [next(flat) for _ in ex.choices]
            np.testing.assert_allclose(mine, theirs, atol=1e-4, rtol=0, err_msg=name)
            assert int(np.argmax(mine)) == int(np.argmax(theirs)), name
            lengths = np.array(option_lengths(ex), dtype=float)
            assert int(np.argmax(np.array(mine) / lengths)) == int(np.argmax(np.array(theirs) / lengths)), name
