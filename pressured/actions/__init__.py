"""Actions: one module each, registered through the ``pressured.actions.v1`` entry-point group."""
