"""resolve_mpp: what model.ckpt records as the training resolution, and how it says so when it cannot."""

from __future__ import annotations

import warnings

import numpy as np
import pytest

from pathseg.engine.config import load_config
from pathseg.engine.train import resolve_mpp
from pathseg.errors import DataError
from pathseg.sample import make_sample


class Stub:
    """A one-image dataset whose first sample records ``mpp`` (or raises ``error``)."""

    def __init__(self, mpp=None, error: Exception | None = None):
        self.mpp, self.error = mpp, error

    def __len__(self):
        return 1

    def __getitem__(self, i):
        if self.error is not None:
            raise self.error
        s = make_sample(np.zeros((4, 4, 3), np.uint8), np.zeros((4, 4), np.int64), id="a", num_classes=2)
        s["meta"]["mpp"] = self.mpp
        return s


def cfg(*extra):
    return load_config(None, ["data.dataset=folder", *extra])


def test_the_recorded_mpp_is_kept_and_data_mpp_wins_with_a_warning():
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert resolve_mpp(cfg(), Stub(0.25)) == 0.25
    with pytest.warns(UserWarning, match=r"data.mpp=0.5 overrides the 0.25 µm/px that dataset 'folder' records"):
        assert resolve_mpp(cfg("data.mpp=0.5"), Stub(0.25)) == 0.5


def test_a_failing_first_sample_raises_naming_the_dataset():
    with pytest.raises(DataError, match=r"dataset 'folder': reading its first 'test' sample.*OSError: disk gone"):
        resolve_mpp(cfg(), Stub(error=OSError("disk gone")))
    with pytest.raises(DataError, match="^already a pathseg message$"):  # pathseg errors pass unchanged
        resolve_mpp(cfg(), Stub(error=DataError("already a pathseg message")))


@pytest.mark.parametrize("odd", ["0.5", 0, -1.0, True])
def test_a_recorded_mpp_that_is_not_a_positive_number_warns_naming_it_and_data_mpp(odd):
    with pytest.warns(UserWarning, match=rf"dataset 'folder' records mpp={odd!r}, not a positive number.*"
                                         r"set data.mpp="):
        assert resolve_mpp(cfg(), Stub(odd)) is None
    assert resolve_mpp(cfg("data.mpp=0.5"), Stub(odd)) == 0.5
