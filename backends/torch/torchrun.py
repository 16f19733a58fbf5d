"""torchrun as clipa-run starts it for several processes:

    python -m clipa.backends.torch.torchrun TORCHRUN_FLAGS -m clipa.backends.torch.worker WORKER_FLAGS

``torch.distributed.run`` itself, quiet where a worker has said why the run stopped. A worker that stops
says it: clipa's line (a signal, a full disk) or a traceback (a bug). torchrun would follow that with a
ChildFailedError or SignalException traceback and logs that repeat it; this exits with the code of the
first worker to fail instead, or 128 + the signal it passed on. It prints a line only where no worker
could: for a worker killed by a signal, and for nodes that never met (instead of the rendezvous's
traceback). It gives a stopping run ``stopping.GRACE_S`` to write its checkpoint before killing it
(torchrun's default is 30 s).
"""
from __future__ import annotations

import logging
import signal
import sys
from typing import Optional

from clipa.backends.stopping import GRACE_S

# torchrun's log lines that the exit code and the workers' own lines already say; the rest pass (among
# them "Unable to shutdown process ..., forcefully exiting": a worker killed before its checkpoint).
_SAID = ("Sending process %s closing signal %s", "failed (exitcode: %s)", "Received %s death signal")


class _Said(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return not str(record.msg).startswith(_SAID)


def main(argv: Optional[list[str]] = None) -> int:
    from torch.distributed import run as torchrun
    from torch.distributed.elastic.multiprocessing.api import SignalException
    from torch.distributed.elastic.multiprocessing.errors import ChildFailedError
    from torch.distributed.elastic.rendezvous.api import RendezvousError

    for name in ("torch.distributed.elastic.multiprocessing.api", "torch.distributed.elastic.agent.server.api"):
        logging.getLogger(name).addFilter(_Said())
    argv = sys.argv[1:] if argv is None else argv
    args = torchrun.parse_args(["--shutdown-timeout", str(GRACE_S), *argv])
    try:
        torchrun.run(args)
    except RendezvousError as e:  # another node never came (or came with other flags)
        why = f"{type(e).__name__}: {e}" if str(e) else type(e).__name__
        print(f"error: the {args.nnodes} nodes did not all meet at {args.rdzv_endpoint} ({why}); run the same "
              "clipa-run command, with its own --node-rank, on every node", file=sys.stderr)
        return 1
    except ChildFailedError as e:
        rank, failure = e.get_first_failure()
        if failure.exitcode >= 0:
            return failure.exitcode
        print(f"error: rank {rank} (pid {failure.pid}) was killed by {failure.signal_name()}", file=sys.stderr)
        return 128 - failure.exitcode
    except SignalException as e:  # passed on to the workers, which checkpointed and said so
        return 128 + int(e.sigval)
    return 0


if __name__ == "__main__":
    sys.exit(main())
