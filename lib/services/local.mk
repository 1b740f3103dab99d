# services (see issues): sources are appended here.
