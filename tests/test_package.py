"""The checker `make wheel-check` runs on the built wheel and sdist (.ci/dist_contents.py): a complete
wheel passes, and each missing licence file, marker, module or bad metadata is named. (CI builds the
real wheel and sdist and runs this checker on them; building them here would slow the suite.)"""

import importlib.util
import io
import tarfile
import zipfile
from pathlib import Path

import pytest

SPEC = importlib.util.spec_from_file_location("dist_contents", Path(__file__).parent.parent / ".ci/dist_contents.py")
dist_contents = importlib.util.module_from_spec(SPEC)
SPEC.loader.exec_module(dist_contents)
VERSION = dist_contents.version()
INFO = f"ragloop-{VERSION}.dist-info"


def make_wheel(path: Path, skip: str = "", license_expression: str = "MIT", version: str = VERSION) -> Path:
    names = [*dist_contents.WHEEL_FILES, *(f"{INFO}/licenses/{n}" for n in dist_contents.LICENSE_FILES)]
    with zipfile.ZipFile(path, "w") as whl:
        for name in names:
            if name != skip:
                whl.writestr(name, "x")
        whl.writestr(f"{INFO}/METADATA", f"Metadata-Version: 2.4\nName: ragloop\nVersion: {version}\n"
                                         f"License-Expression: {license_expression}\n\nREADME\n")
    return path


def make_sdist(path: Path, skip: str = "") -> Path:
    with tarfile.open(path, "w:gz") as tar:
        for name in dist_contents.SDIST_FILES:
            if name != skip:
                info = tarfile.TarInfo(f"ragloop-{VERSION}/{name}")
                info.size = 1
                tar.addfile(info, io.BytesIO(b"x"))
    return path


def test_version_is_read_from_the_one_source():
    import ragloop

    assert ragloop.__version__ == VERSION


def test_complete_wheel_and_sdist_pass(tmp_path, capsys):
    whl, sdist = make_wheel(tmp_path / "r.whl"), make_sdist(tmp_path / "r.tar.gz")
    assert dist_contents.main([str(whl), str(sdist)]) == 0
    assert "dist contents: ok" in capsys.readouterr().out


@pytest.mark.parametrize("missing", ["rag_system.py", "ragloop/py.typed", "ragloop/_bundled/README.md",
                                     f"{INFO}/licenses/LICENSE", f"{INFO}/licenses/NOTICE"])
def test_a_wheel_without_a_file_fails_naming_it(tmp_path, capsys, missing):
    assert dist_contents.main([str(make_wheel(tmp_path / "r.whl", skip=missing))]) == 1
    assert capsys.readouterr().err.strip() == f"r.whl: no {missing}"


@pytest.mark.parametrize("missing", ["NOTICE", "rag_system.py", "src/ragloop/py.typed"])
def test_an_sdist_without_a_file_fails_naming_it(tmp_path, capsys, missing):
    assert dist_contents.main([str(make_sdist(tmp_path / "r.tar.gz", skip=missing))]) == 1
    assert capsys.readouterr().err.strip() == f"r.tar.gz: no {missing}"


def test_wrong_licence_or_version_in_the_metadata_fails(tmp_path, capsys):
    assert dist_contents.main([str(make_wheel(tmp_path / "a.whl", license_expression="Apache-2.0"))]) == 1
    assert "License-Expression is 'Apache-2.0', not 'MIT'" in capsys.readouterr().err
    whl = make_wheel(tmp_path / "b.whl", version="9.9")
    assert dist_contents.main([str(whl)]) == 1  # its dist-info folder is named for the real version, METADATA says 9.9
    assert f"Version is '9.9', not '{VERSION}'" in capsys.readouterr().err
