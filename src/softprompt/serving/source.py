"""Where the served prompts come from: the prompt registry, read only through its public functions.

`RegistrySource` answers two questions: which version of each task is in production now, and give me that
version's files (verified against the registered hash). The registry is a checkout, or a git URL that is
cloned once and fetched on every check. With a `gs://` registry remote, the production pointer object (the
arbiter of promotions across clones) says which version is in production.
"""

from __future__ import annotations

import logging
import multiprocessing
import os
import tempfile
from concurrent.futures import ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from pathlib import Path

from softprompt.errors import SoftpromptError
from softprompt.registry import git as gitrepo

log = logging.getLogger(__name__)


class RegistrySource:
    """Production versions and their files, from a registry checkout or URL."""

    def __init__(self, registry: str) -> None:
        from softprompt.registry import Settings, is_git_url, repo_root

        self.settings = Settings.load()
        token_file = os.environ.get("GIT_TOKEN_FILE")  # KServe mounts the token as a read-only secret file
        if token_file and not os.environ.get("GIT_TOKEN"):
            try:
                os.environ["GIT_TOKEN"] = Path(token_file).read_text(encoding="utf-8").strip()
            except OSError as e:
                raise SoftpromptError(f"GIT_TOKEN_FILE {token_file}: cannot read it ({e.strerror}); mount the "
                                      "registry secret there or unset GIT_TOKEN_FILE") from e
        self.url = registry if is_git_url(registry) else None
        # The pulled prompts (and a clone of a registry URL) live here while the server runs.
        self._tmp = tempfile.TemporaryDirectory(prefix="softprompt-serve-")
        self._worker: ProcessPoolExecutor | None = None
        self._signature: list[tuple[str, str, str]] | None = None  # the registry's tags at the last check
        self.cache = Path(self._tmp.name) / "prompts"
        if self.url:
            self.root = gitrepo.clone(self.url, Path(self._tmp.name) / "registry")
        else:
            self.root = repo_root(registry)

    def refresh(self) -> None:
        """Bring a cloned registry up to date (a checkout is read as it is)."""
        if self.url:
            gitrepo.git(self.root, "fetch", "-q", "--force", "--tags", "origin")
            gitrepo.git(self.root, "reset", "-q", "--hard", "FETCH_HEAD")

    def changed(self) -> bool:
        """Whether the registry's tags changed since the last call (always True with a gs:// pointer).

        Versions and promotions are git tags, so one `git for-each-ref` tells whether reading them again (a
        `git show` per version) is needed: polling stays cheap however many versions the registry holds.
        """
        if self.settings.remote_url().startswith("gs://"):
            return True
        signature = gitrepo.tags(self.root)
        if signature == self._signature:
            return False
        self._signature = signature
        return True

    def forget(self) -> None:
        """Read the registry in full at the next check (after a check that failed halfway)."""
        self._signature = None

    def production(self) -> dict[str, int]:
        """task -> production version number, for every task that has one."""
        from softprompt.registry import summary_rows

        numbers = {r["task"]: int(r["version"][1:]) for r in summary_rows(self.root, stage=self.settings.stage)
                   if r["stage"]}
        remote = self.settings.remote_url()
        if remote.startswith("gs://"):
            from softprompt.registry.gcs_pointer import read_pointer

            for task in numbers:
                pointer, _ = read_pointer(remote, task)
                if pointer:
                    numbers[task] = int(pointer["number"])
        return numbers

    def fetch(self, task: str, number: int) -> Path:
        """The files of `task` version `number`, pulled and verified against the registered hash.

        The pull (DVC, git) runs in a helper process, so that DVC's repo objects and caches stay out of the
        server, whose memory should grow by little more than P x d floats per task.
        """
        if self._worker is None:
            self._worker = ProcessPoolExecutor(max_workers=1, mp_context=multiprocessing.get_context("spawn"))
        try:
            return self._worker.submit(_pull, str(self.root), task, number, str(self.cache / task / f"v{number}"),
                                       self.settings.stage).result()
        except BrokenProcessPool:
            # The helper died (killed, out of memory): a broken pool refuses all later work, so the next pull
            # gets a new one. This pull fails; the server retries it with backoff.
            self._worker.shutdown(wait=False, cancel_futures=True)
            self._worker = None
            raise

    def close(self) -> None:
        if self._worker is not None:
            self._worker.shutdown(cancel_futures=True)
        self._tmp.cleanup()


def _pull(root: str, task: str, number: int, output: str, stage: str) -> Path:
    """registry.pull in the helper process (a module-level function, so it pickles)."""
    from softprompt.registry import pull

    return pull(root, task, version=number, output=output, stage=stage)[0]
