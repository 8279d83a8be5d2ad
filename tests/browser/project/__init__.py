"""The browser tests' Django project: consumers behind TransportRouter, and test pages."""
