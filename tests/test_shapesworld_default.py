"""The ShapesWorld demo's quality on torch's plain CPU kernels (``ATEN_CPU_CAPABILITY=default``):
the same tests as on the machine's own path (test_shapesworld.py), on models trained there.
A file of its own, so that pytest-xdist runs it on a worker of its own."""

import pytest

from test_shapesworld import (  # noqa: F401 - collected here, against this module's `demos`
    PIPELINES, run_demos, test_demo_dnc_checks_every_claim_of_every_record, test_demo_quality_holds_on_every_kernel_path,
    test_demo_samples_are_english_about_shapes_and_mixed)

pytestmark = pytest.mark.demo


@pytest.fixture(scope="module")
def demos(tmp_path_factory) -> dict[str, tuple]:
    # One thread for divide_and_conquer: the native path's demos run beside this module on a
    # 2-core CI machine, and a second thread here would only oversubscribe it.
    return run_demos("default", PIPELINES, tmp_path_factory.mktemp("demo-default"), dnc_threads=1)
