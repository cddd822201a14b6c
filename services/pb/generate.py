"""Generate Python code for proto/*.proto into a directory (used by `make proto` and by the
staleness test). `-Iservices/pb=proto` makes the generated imports `from services.pb import`."""

from __future__ import annotations

import shutil
import sys
import tempfile
from importlib.resources import files
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def generate(out_dir: Path) -> None:
    from grpc_tools import protoc

    protos = sorted(str(p) for p in (ROOT / "proto").glob("*.proto"))
    include = str(files("grpc_tools") / "_proto")
    with_services = [p for p in protos if "\nservice " in Path(p).read_text()]
    out_dir.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as staging:
        for args in (
            [f"--python_out={staging}", f"--pyi_out={staging}", *protos],
            [f"--grpc_python_out={staging}", *with_services],
        ):
            code = protoc.main(["protoc", f"-I{include}", f"-Iservices/pb={ROOT / 'proto'}", *args])
            if code != 0:
                raise SystemExit(f"protoc failed with exit code {code}")
        # protoc writes under the virtual path services/pb/ inside the staging directory
        for f in (Path(staging) / "services" / "pb").iterdir():
            shutil.copyfile(f, out_dir / f.name)


if __name__ == "__main__":
    generate(Path(sys.argv[1]).resolve() if len(sys.argv) > 1 else ROOT / "services" / "pb")
