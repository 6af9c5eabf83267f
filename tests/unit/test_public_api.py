"""Users import from `stride` only; its namespace is deliberate and sorted."""

from __future__ import annotations

import stride


def test_all_is_sorted_and_unique() -> None:
    assert list(stride.__all__) == sorted(set(stride.__all__))


def test_every_exported_name_exists() -> None:
    missing = [name for name in stride.__all__ if not hasattr(stride, name)]
    assert missing == []


def test_every_error_derives_from_stride_error() -> None:
    errors = [getattr(stride, name) for name in stride.__all__
              if isinstance(getattr(stride, name), type)
              and issubclass(getattr(stride, name), BaseException)]
    assert errors
    assert all(issubclass(error, stride.StrideError) for error in errors)
