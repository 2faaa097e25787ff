"""Runtime shared by every stage: ids, catalog, publish, validation gate, Ray session, accounting."""
