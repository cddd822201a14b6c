"""Fill the model cache from the Hugging Face Hub (the chart's model download Job).

Files already there are skipped, so a Job that is run again only finishes what is missing.
The marker file is written last: pods waiting for the model start only on a whole copy.
"""

import os
from pathlib import Path

from huggingface_hub import snapshot_download

target = Path(os.environ["TARGET_DIR"])
snapshot_download(
    repo_id=os.environ["REPO"],
    revision=os.environ["REVISION"],
    local_dir=target,
    token=os.environ.get("HF_TOKEN") or None,
)
Path(os.environ["MARKER"]).touch()
print(f"downloaded {os.environ['REPO']}@{os.environ['REVISION']} into {target}", flush=True)
