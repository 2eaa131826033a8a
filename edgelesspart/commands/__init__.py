"""CLI subcommands: one module each, exposing ``register(subparsers)``.

The top layer (docs/architecture.md): a command parses its flags, calls one library entry point
(the build orchestrator, a service factory, a multi-node subsystem) and prints what it returned;
it holds no logic of its own. It may import every layer below; nothing imports it but
:mod:`edgelesspart.cli`.
"""
