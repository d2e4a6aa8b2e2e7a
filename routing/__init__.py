"""The smart router: channel health (circuit breakers, success estimates), fees and the routing
policy. So far: `breaker` and `health`; the policy and its wiring come with the router issue."""
