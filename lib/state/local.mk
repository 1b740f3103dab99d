# state (see issues): sources are appended here.
