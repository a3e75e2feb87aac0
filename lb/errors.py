"""Errors a user can hit; the CLI prints them as one line, without a traceback."""


class UserError(Exception):
    """Something the operator can fix; str() says what and how."""

    def __init__(self, message: str, exit_code: int = 1):
        super().__init__(message)
        self.exit_code = exit_code
