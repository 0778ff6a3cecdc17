"""The CUDA suite: every test here needs a GPU and is skipped without one (CI has none). Run it with
`python -m pytest -m gpu` or `python scripts/gpu_check.py <report folder>` on a GPU machine."""

import pytest
import torch

requires_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")


def pytest_collection_modifyitems(items):
    for item in items:
        if "tests/gpu/" in str(item.fspath):
            item.add_marker(pytest.mark.gpu)
            item.add_marker(requires_cuda)
