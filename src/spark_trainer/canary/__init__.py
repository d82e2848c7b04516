"""Champion/challenger promotion: replay a traffic set through serving adapters in
staged steps, test the paired differences, and move the `champion` alias only when
every rule passes."""
