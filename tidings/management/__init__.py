"""Django management commands of Tidings."""

__all__: list[str] = []
