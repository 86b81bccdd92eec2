"""The guest runtime's kernel edge: cgroups, spawning an init in new namespaces, root dirs."""
