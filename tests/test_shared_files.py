"""#27: files other people read, and files a crash can leave behind."""

import os
import stat

import pytest
import torch

from proxyattention.atomic import atomic_path


@pytest.fixture
def group_umask():
    old = os.umask(0o002)  # a shared project folder: the group may read and write
    yield
    os.umask(old)


def test_a_checkpoint_gets_the_umask_s_permissions(tmp_path, group_umask):
    """#27.9: safetensors' save_file replaces the temporary file, so the chmod made on it was lost
    and every checkpoint was 0600: group members could not read model.safetensors."""
    from proxyattention.models import save_checkpoint

    model = torch.nn.Linear(3, 2)
    save_checkpoint(model, tmp_path / "model.safetensors", tmp_path / "model.json", {"timm_name": "x"})
    for name in ("model.safetensors", "model.json"):
        assert stat.S_IMODE(os.stat(tmp_path / name).st_mode) == 0o664, name


def test_any_writer_that_replaces_the_temporary_file_keeps_the_permissions(tmp_path, group_umask):
    with atomic_path(tmp_path / "out.bin") as tmp:
        other = tmp.with_name("elsewhere")
        other.write_bytes(b"x")
        os.chmod(other, 0o600)
        os.replace(other, tmp)  # what safetensors and some savers do
    assert stat.S_IMODE(os.stat(tmp_path / "out.bin").st_mode) == 0o664
