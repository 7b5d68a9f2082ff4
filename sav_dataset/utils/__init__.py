"""Building blocks shared by the SA-V and LVOS evaluators: metrics, mask IO, annotation and video converters."""
