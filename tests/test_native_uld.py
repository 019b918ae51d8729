"""The compiled ULD bins kernel (`distill.losses.native`): built for real with the system's compiler, against the
torch route it replaces, and its fallback when it cannot be built."""

from __future__ import annotations

import pytest
import torch

from distill.losses import native, sorting


@pytest.fixture(scope="module")
def kernel(tmp_path_factory):
    """The kernel built from source into a fresh folder (not the user cache)."""
    folder = tmp_path_factory.mktemp("native")
    lib = native.library(str(folder))
    if lib is None:
        pytest.skip("no C++ compiler here: the compiled ULD kernel cannot be built")
    return lib, folder


def _rows(seed: int, dtype, n: int, vs: int, vt: int, scale: float, span: float = 0.0):
    """Softmax rows, the student's scaled down by up to 10^-span (rows reaching 1e-30 need coarser bins)."""
    g = torch.Generator().manual_seed(seed)
    student = torch.softmax(torch.randn(n, vs, generator=g, dtype=torch.float64) * scale, -1)
    teacher = torch.softmax(torch.randn(n, vt, generator=g, dtype=torch.float64) * scale, -1)
    if span:
        student = student * torch.logspace(-span, 0, n, dtype=torch.float64)[:, None]
    return student.to(dtype), teacher.to(dtype)


CASES = {
    "student shorter": dict(n=9, vs=300, vt=700, scale=3.0),
    "student longer": dict(n=9, vs=900, vt=250, scale=3.0),
    "flat (most bins mixed)": dict(n=5, vs=2000, vt=3000, scale=0.05),
    "peaked": dict(n=7, vs=64, vt=96, scale=9.0),
    "rows spanning 30 octaves more": dict(n=6, vs=400, vt=500, scale=3.0, span=9.0),
}


def test_kernel_builds_once_into_its_folder_with_no_leftovers(kernel):
    _, folder = kernel
    built = sorted(p.name for p in folder.iterdir())
    assert len(built) == 1 and built[0].startswith("uld_bins-") and built[0].endswith(".so")
    assert native.library(str(folder)) is kernel[0]  # cached: no second build


@pytest.mark.parametrize("case", list(CASES))
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_kernel_matches_the_torch_route(kernel, case, dtype, monkeypatch):
    """Same values to round-off and the same gradient signs, bit for bit (no ties in these rows), on one thread
    and with the rows split over threads."""
    student, teacher = _rows(3, dtype, **CASES[case])
    want_value, want_signs = sorting._binned_by_torch(student, teacher, True)
    rtol = 4 * torch.finfo(torch.float32).eps if dtype == torch.float32 else 1e-13  # float64 sums, either order
    monkeypatch.setattr(native, "library", lambda: kernel[0])
    monkeypatch.setattr(native, "MIN_ROWS_PER_THREAD", 1)
    for threads in (1, 3):
        monkeypatch.setattr(torch, "get_num_threads", lambda threads=threads: threads)
        value, signs = native.sorted_l1(student, teacher, True)
        torch.testing.assert_close(value, want_value, rtol=rtol, atol=0)
        assert torch.equal(signs, want_signs)
        value_only, no_signs = native.sorted_l1(student, teacher, False)
        assert no_signs is None and torch.equal(value_only, value)
    exact = (student.double().sort(-1, descending=True).values, teacher.double().sort(-1, descending=True).values)
    shared = min(student.shape[1], teacher.shape[1])
    reference = ((exact[0][:, :shared] - exact[1][:, :shared]).abs().sum(-1) + exact[0][:, shared:].sum(-1)
                 + exact[1][:, shared:].sum(-1))
    torch.testing.assert_close(value.double(), reference, rtol=rtol, atol=0)


def test_kernel_refuses_negative_entries_and_spoils_only_non_finite_rows(kernel, monkeypatch):
    monkeypatch.setattr(native, "library", lambda: kernel[0])
    student, teacher = _rows(5, torch.float32, n=3, vs=50, vt=60, scale=2.0)
    with pytest.raises(ValueError, match="student rows hold negative values"):
        native.sorted_l1(-student, teacher, True)
    with pytest.raises(ValueError, match="teacher rows hold negative values"):
        native.sorted_l1(student, -teacher, True)
    spoiled = teacher.clone()
    spoiled[1, 3] = torch.nan
    value, signs = native.sorted_l1(student, spoiled, True)
    clean, clean_signs = native.sorted_l1(student, teacher, True)
    assert value[1].isnan() and signs[1].isnan().all()
    assert torch.equal(value[[0, 2]], clean[[0, 2]]) and torch.equal(signs[[0, 2]], clean_signs[[0, 2]])


def test_without_a_compiler_the_torch_route_is_used_with_one_warning(tmp_path, monkeypatch):
    monkeypatch.setenv("CXX", str(tmp_path / "no-such-compiler"))
    with pytest.warns(UserWarning, match="compiled bins kernel is unavailable"):
        assert native.library.__wrapped__(str(tmp_path / "cache")) is None
    assert not (tmp_path / "cache").exists()
    monkeypatch.setattr(native, "library", lambda: None)
    student, teacher = _rows(1, torch.float32, n=2, vs=30, vt=40, scale=2.0)
    assert native.sorted_l1(student, teacher, True) is None
    value, _ = sorting.sorted_l1_and_grad(student, teacher, True)  # the torch route answers
    torch.testing.assert_close(value, sorting._binned_by_torch(student, teacher, False)[0])


def test_switched_off_by_the_environment(monkeypatch):
    monkeypatch.setenv("DISTILL_NATIVE", "0")
    student, teacher = _rows(1, torch.float32, n=2, vs=30, vt=40, scale=2.0)
    assert native.sorted_l1(student, teacher, True) is None
