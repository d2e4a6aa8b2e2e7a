"""gRPC servicers, interceptors, server assembly and the `dualflow` command line."""
