"""Judge and translator endpoints: servers (`server`), the async client (`client`) and a tiny
CPU model for tests (`tiny`). See DESIGN.md "Judges and servers".

Typical use inside a stage task:

    with endpoint(cfg.translate.translator, run_dir, "translator", log_dir) as ep:
        client = ChatClient.from_judge(cfg.translate.translator, ep, cache=ResponseCache(path))
        results = run_all(client, [{"messages": [...]}, ...])
"""

from ain.serve.client import (
                              ChatClient,
                              ChatResult,
                              ClientError,
                              EndpointUnavailable,
                              InvalidAnswer,
                              RequestRejected,
                              ResponseCache,
                              run_all,
)
from ain.serve.server import (
                              Endpoint,
                              ManagedServer,
                              ServerStartError,
                              endpoint,
                              free_port,
                              serve_shared,
                              wait_for_shared,
)

__all__ = [
    "ChatClient", "ChatResult", "ClientError", "EndpointUnavailable", "InvalidAnswer", "RequestRejected",
    "ResponseCache", "run_all", "Endpoint", "ManagedServer", "ServerStartError", "endpoint", "free_port",
    "serve_shared", "wait_for_shared",
]
