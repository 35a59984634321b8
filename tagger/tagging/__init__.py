"""Tags in the files: reading and writing genres safely (``tags``), the per-format rules (``formats``)
and the undo journal (``journal``)."""
