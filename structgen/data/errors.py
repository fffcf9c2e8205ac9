"""The one exception the data layer raises for bad files, folders and names."""


class DataError(ValueError):
    """A data file, folder or dataset name is missing, corrupt or inconsistent.

    The message always names the file or path involved and what is wrong with it, so a user
    can fix the data without reading a traceback.
    """
