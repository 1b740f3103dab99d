# Daemons: thin mains over the service modules.
