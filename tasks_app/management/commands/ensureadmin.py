from typing import Any

from django.conf import settings
from django.contrib.auth import get_user_model
from django.core.management.base import BaseCommand
from django.utils.crypto import get_random_string
from rest_framework.authtoken.models import Token


class Command(BaseCommand):
    help = (
        "Create an 'admin' superuser if no superuser exists, and print the login and an API token. "
        "The generated password is kept in var/admin-password (mode 600) so later runs can show it."
    )

    def handle(self, *args: Any, **options: Any) -> None:
        User = get_user_model()
        password_file = settings.VAR_DIR / "admin-password"
        admin = User.objects.filter(is_superuser=True).order_by("pk").first()
        if admin is None:
            password = get_random_string(20)
            # "admin" may be an ordinary user already: never promote someone silently.
            username = next(
                name
                for name in ("admin", *(f"admin{n}" for n in range(2, 100)))
                if not User.objects.filter(username=name).exists()
            )
            admin = User.objects.create_superuser(username, f"{username}@localhost", password)
            password_file.write_text(password)
            password_file.chmod(0o600)
        known = password_file.read_text().strip() if password_file.exists() else None
        token, _ = Token.objects.get_or_create(user=admin)
        self.stdout.write(f"  admin login: {admin.get_username()} / {known or '(the password you set)'}")
        self.stdout.write(f"  API token:   {token.key}")
