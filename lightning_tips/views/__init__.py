"""Views: pictures and tables for people, logged through the one logger adapter."""
