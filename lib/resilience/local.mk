# resilience (see issues): sources are appended here.
