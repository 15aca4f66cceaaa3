"""An in-process Flower Grid for fast tests and benchmarks of the coordinator loop.

It delivers each Message to the real fedmtl ClientApp in a thread (one per simulated node,
with its own Context and `partition-id`), turns exceptions into error replies as Flower does,
and honours `send_and_receive(timeout=...)` by returning only the replies that arrived. The
real simulation engine and real SuperLink/SuperNode processes are exercised by other tests.
"""

from __future__ import annotations

import concurrent.futures as cf
import traceback
import uuid
from typing import Iterable

from flwr.app import Context, Error, Message, RecordDict
from flwr.clientapp import ClientApp
from flwr.serverapp import Grid
from flwr.supercore.task_identity import TaskIdentity

from client.app import app as honest_app
from testbed import faults as chaos


class InProcessGrid(Grid):
    """`faults="0:crash,2:nan:3"` makes those partitions misbehave (see `testbed.faults`);
    `client_app` replaces the honest ClientApp for every node (e.g. a hostile one)."""

    def __init__(self, num_nodes: int, node_configs: list[dict] | None = None, first_node_id: int = 1001, *,
                 faults: str = "", hang_seconds: float = 3600.0, client_app: ClientApp | None = None) -> None:
        # Messages are stamped with the identity of the process that creates them; a real
        # ServerApp process has one set by Flower, this test process plays that role.
        TaskIdentity.run_id, TaskIdentity.task_id, TaskIdentity.node_id = 1, 1, 0
        plan = chaos.parse_faults(faults)
        self.client_app = client_app or (chaos.app if plan else honest_app)
        self.contexts: dict[int, Context] = {}
        for i in range(num_nodes):
            config = node_configs[i] if node_configs else {"partition-id": i, "num-partitions": num_nodes}
            if i in plan:
                config = config | plan[i] | {"hang-seconds": hang_seconds}
            node_id = first_node_id + i
            self.contexts[node_id] = Context(run_id=1, node_id=node_id, node_config=config, state=RecordDict(), run_config={})
        self.pool = cf.ThreadPoolExecutor(max_workers=max(4, num_nodes * 2))
        self.sent: list[Message] = []
        self.replies: list[Message] = []
        self._futures: dict[str, cf.Future] = {}

    def remove_node(self, node_id: int) -> None:
        """The node dies: Flower stops listing it and messages to it are never answered."""
        del self.contexts[node_id]

    def add_node(self, config: dict) -> int:
        node_id = max(self.contexts) + 1
        self.contexts[node_id] = Context(run_id=1, node_id=node_id, node_config=config, state=RecordDict(), run_config={})
        return node_id

    # Grid API ------------------------------------------------------------------
    def set_run(self, run_id):  # pragma: no cover - not used
        pass

    @property
    def run(self):  # pragma: no cover - not used
        return None

    def create_message(self, content, message_type, dst_node_id, group_id, ttl=None):  # pragma: no cover
        return Message(content, dst_node_id=dst_node_id, message_type=message_type, group_id=group_id)

    def get_node_ids(self) -> Iterable[int]:
        return list(self.contexts)

    def push_messages(self, messages) -> list[str]:
        """Deliver each message to its node's ClientApp in a thread; ids as Flower gives them.
        A message to a node that is gone is stored but never answered (as with a dead SuperNode)."""
        ids = []
        for msg in messages:
            msg.metadata.__dict__["_message_id"] = uuid.uuid4().hex
            self.sent.append(msg)
            if msg.metadata.dst_node_id in self.contexts:
                self._futures[msg.metadata.message_id] = self.pool.submit(self._deliver, msg)
            ids.append(msg.metadata.message_id)
        return ids

    def pull_messages(self, message_ids) -> list[Message]:
        """The replies that have arrived for these ids (each is handed out once)."""
        out = []
        for mid in message_ids:
            fut = self._futures.get(mid)
            if fut is not None and fut.done():
                del self._futures[mid]
                reply = fut.result()
                if reply is not None:
                    self.replies.append(reply)
                    out.append(reply)
        return out

    def _deliver(self, msg: Message) -> Message | None:
        context = self.contexts.get(msg.metadata.dst_node_id)
        if context is None:  # the node died before the message reached it
            return None
        try:
            return self.client_app(msg, context)
        except Exception as exc:  # as Flower does: the error travels back as the reply
            return Message(Error(code=3, reason=f"{type(exc).__name__}: {exc}\n{traceback.format_exc(limit=1)}"), reply_to=msg)

    def send_and_receive(self, messages: Iterable[Message], *, timeout: float | None = None) -> Iterable[Message]:
        ids = self.push_messages(list(messages))
        futures = [self._futures[i] for i in ids if i in self._futures]
        cf.wait(futures, timeout=timeout)
        return self.pull_messages(ids)

    def partition_of(self, node_id: int) -> int:
        return int(self.contexts[node_id].node_config["partition-id"])
