"""Pure-Python evaluation core: dataset parsing today, generation and grading later. No Django."""
