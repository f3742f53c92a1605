"""Operations of the served product: `make demo`, `make loadtest`, the gRPC client, a private TorchServe
and the HTTP calls they share.

- `demo`: `make demo`'s last step (the starter model through the TorchServe `make serve` started);
- `loadtest`: `make loadtest`, concurrent clients against a private server, every answer checked;
- `grpc_client`: `python -m pipeline grpc-predict`, through TorchServe's gRPC inference API;
- `torchserve_local`: a private TorchServe on free loopback ports (integration tests, load test, benchmarks);
- `torchserve_api`: what they share: one HTTP request, the key file, the wait for a READY worker.
"""
