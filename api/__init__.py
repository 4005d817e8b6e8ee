"""HTTP entrypoint: thin Starlette routes over the command handlers and read models."""
