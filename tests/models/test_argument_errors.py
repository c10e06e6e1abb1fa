"""Losses, layers and heads refuse arguments and batches they cannot use with a ValueError that
names the argument or the shape (the user-facing ConfigError is worded where the config is read:
utils.errors.settings_of, and the trainers' check_setup)."""

import pytest
import torch

from models.arch.linear_hash import ITQHead
from models.arch.wch import WCHHead
from models.layers.bihalf import bihalf_codes
from models.layers.softsort import soft_sort
from models.loss.cibhash import CIBHashLoss
from models.loss.nsh import NSHLoss
from models.loss.ntxent import nt_xent
from models.loss.sdc import SDCLoss
from models.loss.ugh import halves_cosine_mse
from models.loss.wch import WCHLoss
from utils.errors import UserError

BAD_ARGUMENTS = [
    (lambda: SDCLoss(rec_type="l3"), "rec_type 'l3'"),
    (lambda: SDCLoss(quan_type="l4"), "quan_type 'l4'"),
    (lambda: SDCLoss(beta_a=2.0), "beta_a and beta_b"),
    (lambda: SDCLoss(pairing="random"), "pairing 'random'"),
    (lambda: SDCLoss(temperature=0.0), "temperature must be > 0"),
    (lambda: CIBHashLoss(temperature=-0.3), "temperature must be > 0, got -0.3"),
    (lambda: WCHLoss(temperature=0.0), "temperature must be > 0, got 0.0"),
    (lambda: NSHLoss(m=0), "m .* must be >= 1, got 0"),
    (lambda: NSHLoss(tau=0.0), "tau must be > 0"),
    (lambda: NSHLoss(softsort_tau=-1.0), "softsort_tau must be > 0"),
    (lambda: nt_xent(torch.ones(2, 3), torch.ones(2, 3), 0.0), "temperature must be > 0"),
    (lambda: soft_sort(torch.zeros(1, 3), 0.0), "temperature must be > 0"),
    (lambda: WCHHead(8, 4, tau_w=0.0), "tau_w and attention_temperature must be > 0"),
    (lambda: ITQHead(8, 4, iterations=-1), "iterations must be >= 0, got -1"),
]


@pytest.mark.parametrize("build, words", BAD_ARGUMENTS)
def test_a_bad_argument_is_a_value_error_naming_it(build, words):
    with pytest.raises(ValueError, match=words) as caught:
        build()
    assert not isinstance(caught.value, UserError)


BAD_BATCHES = [
    (lambda: SDCLoss()(torch.ones(1, 3), torch.ones(1, 4)), r"\(1, 4\)"),
    (lambda: halves_cosine_mse(torch.ones(1, 3), torch.ones(1, 4)), r"shape \(1, 4\)"),
    (lambda: bihalf_codes(torch.ones(1, 4)), r"shape \(1, 4\)"),
    (lambda: NSHLoss(m=2)(torch.ones(4, 4), torch.ones(4, 5)), r"shape \(4, 4\), 2 per view"),
    (lambda: NSHLoss()(torch.ones(5, 4), torch.ones(5, 5)), r"got codes \(5, 4\)"),
    (lambda: WCHLoss()(torch.ones(3, 4), torch.ones(3, 4), torch.ones(2, 2)), r"weighted \(2, 2\)"),
    (lambda: WCHHead(8, 4)(torch.ones(2, 5, 6)), r"token_dim=8\) but got shape \(2, 5, 6\)"),
]


@pytest.mark.parametrize("run, shape", BAD_BATCHES)
def test_a_batch_of_the_wrong_shape_is_a_value_error_with_the_shape(run, shape):
    with pytest.raises(ValueError, match=shape) as caught:
        run()
    assert not isinstance(caught.value, UserError)
