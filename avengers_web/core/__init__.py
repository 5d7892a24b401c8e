"""Pure Python shared by the apps' cores: no Django, tested alone."""
