# transport (see issues): sources are appended here.
