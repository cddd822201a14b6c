"""What a worker's rpc handlers call: the wire's request types in, the worker's results out,
and the rules that sit between the two (services/worker/servicer.py stays conversion only).

    Decode with a KV handle  -> its prefill worker is loaded as a NIXL peer first, if it
                                joined a moment ago (PeerWatcher.ensure)
    Decode resuming tokens   -> a request whose decode worker failed: the tokens already
                                streamed join the prompt (recomputed here, or found in this
                                worker's prefix cache) and only the rest is generated
"""

from __future__ import annotations

from collections.abc import AsyncGenerator, Callable

from services.wire import DecodeCall, HealthReply, KVDump, PrefillCall, PrefillReply
from services.worker.core import Worker
from services.worker.liveness import Liveness
from services.worker.peers import PeerWatcher
from services.worker.results import DecodeUpdate
from services.worker.stats import WorkerStats


class Leaving(Exception):
    """This prefill worker has left the registry (a gRPC UNAVAILABLE): another prefills."""


class WorkerCalls:
    def __init__(
        self,
        worker: Worker,
        peers: PeerWatcher | None,
        liveness: Liveness,
        leaving: Callable[[], bool] = lambda: False,
    ) -> None:
        """`peers` is None on a prefill worker: it reads from nobody. `leaving`: whether
        the worker is stopping (out of the registry, finishing what it holds)."""
        self.worker = worker
        self.peers = peers
        self.liveness = liveness
        self.leaving = leaving

    async def prefill(self, call: PrefillCall) -> PrefillReply:
        # A stopping worker keeps taking what routers send until they see it gone (decodes
        # finish on it), but a prompt prefilled here now could not be read: decode workers
        # forget a peer as it leaves the registry, and would compute it again. Refused, it
        # goes to another prefill worker, or to the decode worker, at once.
        if self.worker.role == "prefill" and self.leaving():
            raise Leaving(f"{self.worker.worker_id} is stopping and takes no new prompts")
        return await self.worker.prefill(
            call.request_id, call.prompt_token_ids, call.params, call.cache_salt
        )

    async def decode(self, call: DecodeCall) -> AsyncGenerator[DecodeUpdate, None]:
        """Awaited before the stream starts, so a refusal comes before any token."""
        handle, prompt, params = call.handle, call.prompt_token_ids, call.params
        if call.generated_token_ids:
            if handle is not None or call.first_token is not None:
                raise ValueError("a resumed request carries no KV handle and no first token")
            prompt = prompt + call.generated_token_ids
            params = params.remaining(len(call.generated_token_ids))
        if handle is not None and self.peers is not None:
            await self.peers.ensure(handle.worker_id, handle.agent_name)
        return self.worker.decode(
            call.request_id, prompt, params, handle, call.first_token, call.cache_salt
        )

    async def abort(self, request_id: str) -> bool:
        return await self.worker.abort(request_id)

    def health(self) -> HealthReply:
        w = self.worker
        return HealthReply(ok=self.liveness.problem() is None, worker_id=w.worker_id, role=w.role)

    async def stats(self) -> WorkerStats:
        """Audits the block pool too (O(blocks)): Stats is for tests and operators."""
        return await self.worker.stats(integrity=True)

    async def dump_kv(self) -> KVDump:
        w = self.worker
        seq, hashes = await w.dump_kv()
        return KVDump(w.worker_id, w.started_at_ms, seq, hashes, w.engine.block_size)
