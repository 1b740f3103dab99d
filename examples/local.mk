# Examples: small programs using the public API.
