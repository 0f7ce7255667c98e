"""training/weather/teachers.py: every registered teacher loads its file (a random state dict of
the same shapes where ../shared is absent), takes RGB in [0, 1] at any size and returns the same
size in [0, 1]; GCANet's edge map; UMRL's per-image normalisation."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from models.teachers.aodnet import AODNet
from models.teachers.gcanet import GCANet
from models.teachers.prenet import PReNet
from models.teachers.umrl import UMRL
from tests.conftest import SHARED
from training.weather.teachers import TEACHERS, edge_map, load_teacher, teachers_of

pytestmark = pytest.mark.usefixtures("one_thread")

WEIGHTS = SHARED / "weights" / "teachers"
ARCHITECTURES = {"prenet": PReNet, "umrl": UMRL, "gcanet": GCANet, "aodnet": AODNet}  # by folder


def _root(name: str, tmp_path: Path) -> Path:
    """The shared weights where present, else a root holding a randomly initialised file of the
    registered architecture at the registered path (the loader's code path, random weights)."""
    if WEIGHTS.is_dir() or TEACHERS[name].ours:  # ours: committed in the repository
        return WEIGHTS
    file = TEACHERS[name].file
    torch.manual_seed(0)
    (tmp_path / file).parent.mkdir(parents=True)
    torch.save(ARCHITECTURES[file.split("/")[0]]().state_dict(), tmp_path / file)
    return tmp_path


@pytest.mark.parametrize("name", TEACHERS)
def test_teacher_keeps_odd_sizes_and_the_range(name: str, tmp_path: Path) -> None:
    teacher = load_teacher(name, _root(name, tmp_path))
    assert not teacher.training and not any(p.requires_grad for p in teacher.parameters())
    torch.manual_seed(1)
    x = torch.rand(2, 3, 37, 29)
    with torch.no_grad():
        y = teacher(x)
    assert y.shape == x.shape
    assert float(y.min()) >= 0.0 and float(y.max()) <= 1.0


def test_registry_names_weathers_and_unknown_names_fail() -> None:
    assert set(teachers_of("rain")) == {"prenet-rain100h", "prenet-rain100l", "prenet-rain1400", "umrl-didmdn"}
    assert set(teachers_of("haze")) == {"gcanet-its", "aodnet", "student-2.0"}
    assert teachers_of("snow") == []
    with pytest.raises(ValueError, match="unknown teacher"):
        load_teacher("prenet-snow")


def test_edge_map_sums_the_four_neighbour_differences() -> None:
    """One channel set to [[0, 8, 0]] (the others 0): the middle pixel differs by 8 from both
    horizontal neighbours (16), each end pixel by 8 from one (8); averaged over 3 channels, / 4."""
    rgb = torch.zeros(1, 3, 1, 3)
    rgb[0, 0, 0, 1] = 8.0
    assert torch.allclose(edge_map(rgb), torch.tensor([[[[8.0, 16.0, 8.0]]]]) / 12)
    flat = torch.full((1, 3, 4, 5), 200.0)
    assert torch.equal(edge_map(flat), torch.zeros(1, 1, 4, 5))


def test_umrl_normalises_each_image_on_its_own(tmp_path: Path) -> None:
    """BatchNorm runs on each image's statistics (the authors' test mode) one image at a time:
    an image's output does not depend on the other images of its batch."""
    teacher = load_teacher("umrl-didmdn", _root("umrl-didmdn", tmp_path))
    torch.manual_seed(2)
    a, b = torch.rand(1, 3, 32, 32), torch.rand(1, 3, 32, 32) * 0.2
    with torch.no_grad():
        alone = teacher(a)
        batched = teacher(torch.cat((a, b)))[:1]
    assert torch.allclose(alone, batched, atol=1e-6)
