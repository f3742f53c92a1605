"""Operations harnesses, not part of the product: a private loopback TorchServe (tests, load test, benchmarks) and the load test."""
