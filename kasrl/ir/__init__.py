"""The kernel IR: exact symbolic sizes, six-axis shapes, primitives, graphs, canonical identity and JSON."""
