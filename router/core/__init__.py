"""Pure decisions: no I/O, standard library only."""
