"""Verdict accuracy: correct pairs pass and wrong ones fail, on every seed (issue 22).

The wrong implementations are the classic mistakes (one per fixture file, each with the
pair it breaks), including those a hostile trial found passing: eps left out of batch and
layer norm's backward, group norm grouped by C // G, convolution's padding sliced away as
pad:-pad (empty at pad 0). The correct ones include a forward that computes in float32,
which used to fail. The fast suite runs a few seeds; ``-m slow`` runs 25.
"""

import importlib
import sys
from pathlib import Path

import pytest

from npgrad.checking.user_files import check_functions

WRONG = [
    ("zero_gradient", "affine_forward/affine_backward"),
    ("bn_constant_stats", "batchnorm_forward/batchnorm_backward"),
    ("alt_disagrees", "batchnorm_forward/batchnorm_backward_alt"),
    ("loss_not_divided", "softmax_loss"),
    ("dropout_new_mask", "dropout_forward/dropout_backward"),
    ("running_stats_not_updated", "batchnorm_forward/batchnorm_backward"),
    ("running_stats_not_used", "batchnorm_forward/batchnorm_backward"),
    ("conv_kernel_flipped", "conv_forward_naive/conv_backward_naive"),
    ("conv_padding_kept", "conv_forward_naive/conv_backward_naive"),
    ("conv_stride_ignored", "conv_forward_naive/conv_backward_naive"),
    ("conv_pad_slice", "conv_forward_naive/conv_backward_naive"),
    ("pool_spread", "max_pool_forward_naive/max_pool_backward_naive"),
    ("pool_overlap_assigned", "max_pool_forward_naive/max_pool_backward_naive"),
    ("eps_dropped_batchnorm", "batchnorm_forward/batchnorm_backward"),
    ("eps_dropped_layernorm", "layernorm_forward/layernorm_backward"),
    ("groupnorm_c_over_g", "spatial_groupnorm_forward/spatial_groupnorm_backward"),
    # the third assignment's
    ("rnn_not_carried", "rnn_forward/rnn_backward"),
    ("rnn_not_accumulated", "rnn_forward/rnn_backward"),
    ("embedding_assigned", "word_embedding_forward/word_embedding_backward"),
    ("temporal_mask_ignored", "temporal_softmax_loss"),
    ("temporal_loss_per_nt", "temporal_softmax_loss"),
]
CORRECT = ["correct_layers", "affine_float32", "rnn_layers"]


PAIRS = Path(__file__).resolve().parents[1] / "fixtures" / "pairs"


def fixture(name):
    if str(PAIRS) not in sys.path:  # the fixtures import correct_layers as students' files do
        sys.path.insert(0, str(PAIRS))
    return importlib.import_module(name)


def verdicts(seeds):
    false_passes, false_alarms = [], []
    for seed in seeds:
        for name, pair in WRONG:
            report = next(r for r in check_functions(fixture(name), seed=seed) if r.name == pair)
            if report.passed:
                false_passes.append((name, seed))
        for name in CORRECT:
            for r in check_functions(fixture(name), seed=seed):
                if not r.passed:
                    false_alarms.append((name, r.name, seed, r.diagnoses[:1]))
    return false_passes, false_alarms


def test_no_false_pass_and_no_false_alarm_on_a_few_seeds():
    assert verdicts([1, 2]) == ([], [])  # seed 0 is every other test's


@pytest.mark.slow
def test_no_false_pass_and_no_false_alarm_over_25_seeds():
    assert verdicts(range(25)) == ([], [])


def test_the_classic_hidden_mistakes_are_named():
    diagnoses = {
        name: next(r for r in check_functions(fixture(name)) if r.name == pair).diagnoses[0]
        for name, pair in WRONG
        if name in ("conv_pad_slice", "eps_dropped_batchnorm", "eps_dropped_layernorm",
                    "groupnorm_c_over_g")
    }  # fmt: skip
    assert "dx is empty: with pad = 0" in diagnoses["conv_pad_slice"]
    assert "eps left out of the backward" in diagnoses["eps_dropped_batchnorm"]
    assert "eps left out of the backward" in diagnoses["eps_dropped_layernorm"]
    assert "forward: differs from the definition" in diagnoses["groupnorm_c_over_g"]
    note = str(check_functions(fixture("affine_float32"))[0])
    assert "computes in float32" in note and "PASS" in note


@pytest.mark.parametrize(
    "name, pair, words",
    [
        ("rnn_not_carried", "rnn_forward/rnn_backward", "dx: the hidden state's gradient is not carried back"),
        ("rnn_not_accumulated", "rnn_forward/rnn_backward", "dWx: the weights' gradient is not accumulated over the time steps"),
        ("embedding_assigned", "word_embedding_forward/word_embedding_backward", "dW: dW is assigned, not accumulated"),
        ("temporal_mask_ignored", "temporal_softmax_loss", "forward: the mask is not applied"),
        ("temporal_loss_per_nt", "temporal_softmax_loss", "forward: the loss is divided by N * T"),
    ],
)  # fmt: skip
def test_the_recurrent_assignments_mistakes_are_named(name, pair, words):
    report = next(r for r in check_functions(fixture(name)) if r.name == pair)
    assert not report.passed and report.diagnoses[0].startswith(words), report.diagnoses


def test_every_recurrent_pair_of_the_assignment_is_checked():
    reports = check_functions(fixture("rnn_layers"))
    assert sorted(r.name for r in reports) == [
        "lstm_forward/lstm_backward", "lstm_step_forward/lstm_step_backward",
        "rnn_forward/rnn_backward", "rnn_step_forward/rnn_step_backward",
        "temporal_affine_forward/temporal_affine_backward", "temporal_softmax_loss",
        "word_embedding_forward/word_embedding_backward",
    ]  # fmt: skip
    assert all(r.passed for r in reports), [r.summary for r in reports if not r.passed]
    embedding = next(r for r in reports if r.name.startswith("word_embedding"))
    assert [i.name for i in embedding.cases[0].inputs] == ["dW"]  # the indices get no gradient


def test_a_pair_npgrad_cannot_check_is_said_so_and_is_no_failure(tmp_path):
    from npgrad.cli import main

    path = tmp_path / "mine.py"
    path.write_text(
        "import numpy as np\n\n\ndef hinge_squared_loss(x, y):\n    return 0.0, np.zeros_like(x)\n"
    )
    (report,) = check_functions({"hinge_squared_loss": lambda x, y: (0.0, x * 0)})
    assert report.not_checked and "no loss named 'hinge_squared' is known" in report.not_checked
    assert report.summary.startswith("hinge_squared_loss: NOT CHECKED")
    assert main(["check", str(path)]) == 0
