"""Plain reimplementations of the original methods, written from their code, to test against."""
